"""Reports that hold our figures against the paper's: the Table II analog (``table2``) and the
paper's own numbers (``paper``). Kept out of the library core: they assemble runs, they do not
model anything."""
