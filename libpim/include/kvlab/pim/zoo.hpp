// Built-in networks for --net: ImageNet classifiers with the shapes of their reference
// implementations (docs/pim-compile.md says which variant each is). Batch norm is folded into the
// preceding convolution, as inference deployments do.
#pragma once

#include <string>
#include <vector>

#include "kvlab/core/netdesc.hpp"

namespace kvlab::pim {

/// vgg16, resnet18, squeezenet, mobilenetv2, resnet50, alexnet.
const std::vector<std::string>& zoo_names();

/// The named network (source "zoo:<name>"); UsageError for an unknown name.
core::NetDesc zoo_net(const std::string& name);

}  // namespace kvlab::pim
