// Force-included first into every unit-test translation unit (tests/CMakeLists.txt via
// kvlab_add_unit_test). LibTorch's c10 logging (glog in Debian's build, c10's own macros in PyPI
// builds) defines CHECK, CHECK_EQ, ...: included after doctest it silently replaces doctest's
// assertions with aborting ones, included before it clashes. Include it here once, drop its
// macros, then include doctest, so every test file gets doctest's CHECK whatever it includes.
#pragma once
#include <c10/util/Logging.h>
#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LT
#undef CHECK_LE
#undef CHECK_GT
#undef CHECK_GE
#include <doctest/doctest.h>
