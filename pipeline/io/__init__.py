"""Reading input tables and images; writing images and metadata."""
