"""metrix.index: a folder of gallery images to a faiss index with metadata (`metrix build-index`)."""
