// Artifact kinds owned by libllm, registered for `kvlab inspect --validate`.
#pragma once

#include "kvlab/core/schema.hpp"

namespace kvlab::llm {

/// Adds the schema of every artifact kind libllm writes (none until its first writer lands).
void register_schemas(core::SchemaRegistry& reg);

}  // namespace kvlab::llm
