"""Applications built on the library: the demo (the main job) and the benchmarks, with one registry of
the models they build (`models`)."""
