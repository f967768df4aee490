"""Edge node: reads a stream, classifies with the generalist, offloads uncertain frames to experts."""
