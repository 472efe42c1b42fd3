"""Sharded data sets: items packed in WebDataset tar shards, read a whole shard per request.

    omnimae-data shard /nfs/imagenet s3://bucket/in1k-shards      # writer.py: tars + shards_train.jsonl
    omnimae-data index s3://bucket/laion-shards                   # indexer.py: tars others wrote
    data.image.root=s3://bucket/in1k-shards                       # a root with a shard index trains from it

index.py    the shard index (shards_<split>.jsonl): shards, members, offsets; ShardedManifest
tar.py      tar headers: scanning a remote tar by ranged reads, checking a member, building a tar
plan.py     an epoch's order: shard order, the split between ranks, the mixing of `buffer` open shards
stream.py   ShardStream: the order read shard by shard through an AsyncReader, members sliced out;
            what ItemLoader reads a ShardedManifest through (ItemStream for a plain manifest)
writer.py   `omnimae-data shard`: a manifest's items into tars, several at once, resumable, by rank
indexer.py  `omnimae-data index` for *.tar shards: headers by ranged reads, labels, probing
"""
