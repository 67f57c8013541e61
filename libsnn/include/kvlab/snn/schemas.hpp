// Artifact kinds owned by libsnn, registered for `kvlab inspect --validate`.
#pragma once

#include "kvlab/core/schema.hpp"

namespace kvlab::snn {

/// Adds the schema of every artifact kind libsnn writes (none until its first writer lands).
void register_schemas(core::SchemaRegistry& reg);

}  // namespace kvlab::snn
