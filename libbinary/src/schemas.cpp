#include "kvlab/binary/schemas.hpp"

namespace kvlab::binary {

void register_schemas(core::SchemaRegistry& /*reg*/) {}

}  // namespace kvlab::binary
