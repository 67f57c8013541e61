#include "kvlab/pim/schemas.hpp"

namespace kvlab::pim {

void register_schemas(core::SchemaRegistry& /*reg*/) {}

}  // namespace kvlab::pim
