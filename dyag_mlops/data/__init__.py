"""What the platform reads and writes: the corpus and its documents' fields
(inventory), eval sets, text normalisation, atomic files. Imports nothing
above it."""
