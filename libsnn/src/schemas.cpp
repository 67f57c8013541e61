#include "kvlab/snn/schemas.hpp"

namespace kvlab::snn {

void register_schemas(core::SchemaRegistry& /*reg*/) {}

}  // namespace kvlab::snn
