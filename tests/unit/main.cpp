// Shared doctest main for every kvlab unit-test executable. TEST_CASEs live only in tests/ (never
// in the static libraries, where the linker would drop their registration).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
