"""Hospital data: decoding, dataset layouts, partitions, synthetic hospitals, transforms."""
