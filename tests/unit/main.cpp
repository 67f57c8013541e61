// Shared doctest main for every kvlab unit-test executable (DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN is
// set for this file by kvlab_add_unit_test). TEST_CASEs live only in tests/ (never in the static
// libraries, where the linker would drop their registration).
#include <doctest/doctest.h>
