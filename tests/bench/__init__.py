"""Tests of the benchmarks and drills in bench/ themselves: the only tests that import bench/."""
