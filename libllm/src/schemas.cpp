#include "kvlab/llm/schemas.hpp"

namespace kvlab::llm {

void register_schemas(core::SchemaRegistry& /*reg*/) {}

}  // namespace kvlab::llm
