"""One module per peer data loader, each running the same standard train pipeline (see _common.py).

Every module has ``make_loader(data_dir, batch_size, num_workers, seed)`` returning a re-iterable
(one pass = one epoch) of ``(images, labels)``: images uint8 [B, 3, 224, 224], labels int64 [B];
and a ``__main__`` that times it: ``python -m benchmarks.peers.<module> --data DIR``.
``data_dir`` is benchmarks/make_dataset.py's ``--out`` folder; each peer reads its own sub-folder.
"""
