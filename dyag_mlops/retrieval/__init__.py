"""Finding the document a question is about and the part of it to show: the
embedding model, the vector index and its hybrid search, document names,
and narrowing a sheet to the asked field."""
