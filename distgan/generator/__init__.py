"""Everything needed to use a trained generator: the architectures, sampling (noise, labels), sample grids,
loading G from a checkpoint or an export, and the export format."""
