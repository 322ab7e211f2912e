"""What the studies share: resumable stages, report building blocks, the chat studies' planting and
command line. Studies import this and the library, never each other."""
