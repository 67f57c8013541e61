// kvlab entry point: everything lives in the kvlab_cli library (app.cpp, cmd_*.cpp) so the CLI
// contract test can build the same CLI::App.
#include "commands.hpp"

int main(int argc, char** argv) { return kvlab::cli::run(argc, argv); }
