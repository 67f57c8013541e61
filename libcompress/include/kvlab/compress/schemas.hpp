// Artifact kinds owned by libcompress, registered for `kvlab inspect --validate`.
#pragma once

#include "kvlab/core/schema.hpp"

namespace kvlab::compress {

/// Adds the schema of every artifact kind libcompress writes (kv-report).
void register_schemas(core::SchemaRegistry& reg);

}  // namespace kvlab::compress
