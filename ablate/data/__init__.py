"""Data: image-caption readers (webdataset shards, image folders, parquet), preprocessing."""
