// Copyright 2026 The llmem Authors.

#include <iostream>

#include "cli.h"

int main(int argc, char** argv) {
  return llmem::cli::run(argc, argv, std::cout, std::cerr);
}
