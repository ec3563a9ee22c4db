"""The reading side: reports, comparisons and listings rendered from run directories.
Imports no JAX, so it starts in well under a second."""
