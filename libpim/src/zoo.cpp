#include "kvlab/pim/zoo.hpp"

#include <fmt/format.h>

#include "kvlab/core/error.hpp"

namespace kvlab::pim {

using core::NetBuilder;
using core::NetDesc;

namespace {

// VGG-16 (Simonyan & Zisserman, configuration D; torchvision vgg16): 13 3x3 convs, 5 max pools,
// three fully connected layers. 224x224 input.
NetDesc vgg16() {
  NetBuilder b("vgg16", "zoo:vgg16");
  b.input("data", {3, 224, 224});
  const int cfg[] = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
  int stage = 1, k = 1;
  for (int c : cfg) {
    if (c == 0) {
      b.pool(fmt::format("pool{}", stage), -1, "max", 2, 2);
      ++stage;
      k = 1;
      continue;
    }
    b.conv(fmt::format("conv{}_{}", stage, k), -1, c, 3, 1, 1);
    b.act(fmt::format("relu{}_{}", stage, k), -1);
    ++k;
  }
  b.reshape("flatten", -1, "flatten");
  b.fc("fc6", -1, 4096);
  b.act("relu6", -1);
  b.reshape("drop6", -1, "dropout");
  b.fc("fc7", -1, 4096);
  b.act("relu7", -1);
  b.reshape("drop7", -1, "dropout");
  b.fc("fc8", -1, 1000);
  return b.finish();
}

// ResNet-18/50 (He et al.; torchvision resnet18/resnet50, i.e. v1.5: the stride sits on the 3x3
// conv of a bottleneck). BN folded; convs carry no bias, as in torchvision.
NetDesc resnet(int depth) {
  const std::string name = fmt::format("resnet{}", depth);
  NetBuilder b(name, "zoo:" + name);
  b.input("data", {3, 224, 224});
  b.conv("conv1", -1, 64, 7, 2, 3, 1, false);
  b.act("relu1", -1);
  int x = b.pool("pool1", -1, "max", 3, 2, 1);
  const bool bottleneck = depth == 50;
  const int blocks18[] = {2, 2, 2, 2}, blocks50[] = {3, 4, 6, 3};
  const int expansion = bottleneck ? 4 : 1;
  std::int64_t in_c = 64;
  for (int s = 0; s < 4; ++s) {
    const std::int64_t planes = 64LL << s;
    const int nblocks = bottleneck ? blocks50[s] : blocks18[s];
    for (int k = 0; k < nblocks; ++k) {
      const int stride = (k == 0 && s > 0) ? 2 : 1;
      const std::string p = fmt::format("layer{}.{}", s + 1, k);
      int y;
      if (bottleneck) {
        b.conv(p + ".conv1", x, planes, 1, 1, 0, 1, false);
        b.act(p + ".relu1", -1);
        b.conv(p + ".conv2", -1, planes, 3, stride, 1, 1, false);
        b.act(p + ".relu2", -1);
        y = b.conv(p + ".conv3", -1, planes * expansion, 1, 1, 0, 1, false);
      } else {
        b.conv(p + ".conv1", x, planes, 3, stride, 1, 1, false);
        b.act(p + ".relu1", -1);
        y = b.conv(p + ".conv2", -1, planes, 3, 1, 1, 1, false);
      }
      int skip = x;
      if (stride != 1 || in_c != planes * expansion)
        skip = b.conv(p + ".downsample", x, planes * expansion, 1, stride, 0, 1, false);
      b.add(p + ".add", {y, skip});
      x = b.act(p + ".relu", -1);
      in_c = planes * expansion;
    }
  }
  b.global_pool("avgpool", x, "avg");
  b.reshape("flatten", -1, "flatten");
  b.fc("fc", -1, 1000);
  return b.finish();
}

// SqueezeNet 1.1 (torchvision squeezenet1_1; the version of PIMCOMP-NN's model and of the
// issue's 359-crossbar count): 3x3/64 first conv, ceil-mode max pools, 8 fire modules.
NetDesc squeezenet() {
  NetBuilder b("squeezenet", "zoo:squeezenet");
  b.input("data", {3, 224, 224});
  b.conv("conv1", -1, 64, 3, 2, 0);
  b.act("relu1", -1);
  b.pool("pool1", -1, "max", 3, 2, 0, true);
  auto fire = [&](int id, std::int64_t sq, std::int64_t e1, std::int64_t e3) {
    const std::string p = fmt::format("fire{}", id);
    b.conv(p + ".squeeze", -1, sq, 1);
    const int s = b.act(p + ".squeeze_relu", -1);
    b.conv(p + ".expand1x1", s, e1, 1);
    const int a = b.act(p + ".expand1x1_relu", -1);
    b.conv(p + ".expand3x3", s, e3, 3, 1, 1);
    const int c = b.act(p + ".expand3x3_relu", -1);
    return b.concat(p + ".concat", {a, c});
  };
  fire(2, 16, 64, 64);
  fire(3, 16, 64, 64);
  b.pool("pool3", -1, "max", 3, 2, 0, true);
  fire(4, 32, 128, 128);
  fire(5, 32, 128, 128);
  b.pool("pool5", -1, "max", 3, 2, 0, true);
  fire(6, 48, 192, 192);
  fire(7, 48, 192, 192);
  fire(8, 64, 256, 256);
  fire(9, 64, 256, 256);
  b.reshape("drop9", -1, "dropout");
  b.conv("conv10", -1, 1000, 1);
  b.act("relu10", -1);
  b.global_pool("pool10", -1, "avg");
  b.reshape("flatten", -1, "flatten");
  return b.finish();
}

// MobileNetV2 (Sandler et al.; torchvision mobilenet_v2, width 1.0): depthwise convs are grouped
// convs with groups = channels, so each channel takes its own crossbar under the im2col mapping.
NetDesc mobilenetv2() {
  NetBuilder b("mobilenetv2", "zoo:mobilenetv2");
  b.input("data", {3, 224, 224});
  b.conv("conv0", -1, 32, 3, 2, 1, 1, false);
  int x = b.act("conv0.relu6", -1, "relu6");
  struct S {
    int t, c, n, s;
  };
  const S settings[] = {{1, 16, 1, 1},
                        {6, 24, 2, 2},
                        {6, 32, 3, 2},
                        {6, 64, 4, 2},
                        {6, 96, 3, 1},
                        {6, 160, 3, 2},
                        {6, 320, 1, 1}};
  std::int64_t in_c = 32;
  int block = 1;
  for (const S& st : settings) {
    for (int i = 0; i < st.n; ++i, ++block) {
      const int stride = i == 0 ? st.s : 1;
      const std::int64_t hidden = in_c * st.t;
      const std::string p = fmt::format("block{}", block);
      int y = x;
      if (st.t != 1) {
        b.conv(p + ".expand", y, hidden, 1, 1, 0, 1, false);
        y = b.act(p + ".expand_relu6", -1, "relu6");
      }
      b.conv(p + ".dw", y, hidden, 3, stride, 1, hidden, false);
      b.act(p + ".dw_relu6", -1, "relu6");
      y = b.conv(p + ".project", -1, st.c, 1, 1, 0, 1, false);
      if (stride == 1 && in_c == st.c) y = b.add(p + ".add", {y, x});
      x = y;
      in_c = st.c;
    }
  }
  b.conv("conv_last", x, 1280, 1, 1, 0, 1, false);
  b.act("conv_last.relu6", -1, "relu6");
  b.global_pool("avgpool", -1, "avg");
  b.reshape("flatten", -1, "flatten");
  b.reshape("dropout", -1, "dropout");
  b.fc("fc", -1, 1000);
  return b.finish();
}

// AlexNet as published (Krizhevsky et al. 2012; Caffe bvlc_alexnet): 227x227 input, LRN, and the
// two-GPU grouping kept as groups = 2 on conv2, conv4 and conv5.
NetDesc alexnet() {
  NetBuilder b("alexnet", "zoo:alexnet");
  b.input("data", {3, 227, 227});
  b.conv("conv1", -1, 96, 11, 4, 0);
  b.act("relu1", -1);
  b.norm("norm1", -1, "lrn");
  b.pool("pool1", -1, "max", 3, 2);
  b.conv("conv2", -1, 256, 5, 1, 2, 2);
  b.act("relu2", -1);
  b.norm("norm2", -1, "lrn");
  b.pool("pool2", -1, "max", 3, 2);
  b.conv("conv3", -1, 384, 3, 1, 1);
  b.act("relu3", -1);
  b.conv("conv4", -1, 384, 3, 1, 1, 2);
  b.act("relu4", -1);
  b.conv("conv5", -1, 256, 3, 1, 1, 2);
  b.act("relu5", -1);
  b.pool("pool5", -1, "max", 3, 2);
  b.reshape("flatten", -1, "flatten");
  b.fc("fc6", -1, 4096);
  b.act("relu6", -1);
  b.reshape("drop6", -1, "dropout");
  b.fc("fc7", -1, 4096);
  b.act("relu7", -1);
  b.reshape("drop7", -1, "dropout");
  b.fc("fc8", -1, 1000);
  return b.finish();
}

}  // namespace

const std::vector<std::string>& zoo_names() {
  static const std::vector<std::string> n = {
      "vgg16", "resnet18", "squeezenet", "mobilenetv2", "resnet50", "alexnet"};
  return n;
}

NetDesc zoo_net(const std::string& name) {
  if (name == "vgg16") return vgg16();
  if (name == "resnet18") return resnet(18);
  if (name == "resnet50") return resnet(50);
  if (name == "squeezenet") return squeezenet();
  if (name == "mobilenetv2") return mobilenetv2();
  if (name == "alexnet") return alexnet();
  KVLAB_THROW(UsageError,
              "--net {}: unknown network; built-in: vgg16, resnet18, squeezenet, mobilenetv2, "
              "resnet50, alexnet",
              name);
}

}  // namespace kvlab::pim
