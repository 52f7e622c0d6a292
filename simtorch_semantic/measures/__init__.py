"""Layer x layer similarity measures over a DataLoader."""
