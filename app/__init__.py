"""metrix.app: the Gradio web UI that searches an index with an uploaded image (`metrix serve`)."""
