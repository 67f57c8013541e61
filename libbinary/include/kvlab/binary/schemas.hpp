// Artifact kinds owned by libbinary, registered for `kvlab inspect --validate`.
#pragma once

#include "kvlab/core/schema.hpp"

namespace kvlab::binary {

/// Adds the schema of every artifact kind libbinary writes (none until its first writer lands).
void register_schemas(core::SchemaRegistry& reg);

}  // namespace kvlab::binary
