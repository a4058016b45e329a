"""metrix.app: the search service: the web page and the JSON API of `metrix serve`, in one process."""
