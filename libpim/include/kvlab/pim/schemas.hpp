// Artifact kinds owned by libpim, registered for `kvlab inspect --validate`.
#pragma once

#include "kvlab/core/schema.hpp"

namespace kvlab::pim {

/// Adds the schema of every artifact kind libpim writes (none until its first writer lands).
void register_schemas(core::SchemaRegistry& reg);

}  // namespace kvlab::pim
