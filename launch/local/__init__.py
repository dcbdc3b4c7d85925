"""The launch scripts' --local backend: the image's own programs on this machine."""
