#include "kvlab/compress/schemas.hpp"

namespace kvlab::compress {

void register_schemas(core::SchemaRegistry& /*reg*/) {}

}  // namespace kvlab::compress
