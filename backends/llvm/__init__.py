"""The LLVM CPU backend: loop IR -> llvmlite IR -> native code."""
