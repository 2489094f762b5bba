"""Back end: partition, memory, packing, code generation, Program."""
