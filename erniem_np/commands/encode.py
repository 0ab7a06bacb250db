"""``erniem-np encode``: texts to embeddings in a .npy or .safetensors file, streamed; optionally on Dask."""

from __future__ import annotations

import argparse
import json
import os
from collections import deque

from ._common import (
    EXIT_OK,
    JsonOutput,
    Progress,
    UserError,
    add_input_options,
    add_model_options,
    pipeline_options,
    wrap,
)
from ._common import iter_inputs as _iter_inputs


def run(args: argparse.Namespace) -> int:
    from ..pipelines.encode import Encoder, encode_to_file

    options = pipeline_options(args)
    options.update(pooling=args.pooling, chunk_size=args.chunk_size, normalize=args.normalize)
    if args.output:
        ext = os.path.splitext(args.output)[1].lower()
        if ext not in (".npy", ".safetensors"):
            raise UserError(f"{args.output}: the output must end in .npy or .safetensors")
        if ext == ".npy" and args.pooling == "last":
            raise UserError("--pooling last gives a different number of rows per text: write a .safetensors "
                            "file (last_hidden_state + offsets), not .npy")  # fmt: skip
    if args.dask is not None:
        encoder = _dask_encoder(args, options)
    else:
        encoder = Encoder(args.model, **options)
    progress = None if args.quiet else Progress()
    texts = _iter_inputs(args)
    try:
        if args.output:
            n = encode_to_file(encoder, texts, args.output, progress)
            summary = {"output": args.output, "texts": n, "pooling": encoder.pooling, "dim": encoder.dim,
                       "dtype": str(encoder.dtype)}  # fmt: skip
            if args.json:
                print(json.dumps(summary))
            else:
                what = "token vectors of" if encoder.pooling == "last" else "embeddings of"
                print(f"wrote {what} {n} texts ({encoder.pooling}, {encoder.dim} wide, {encoder.dtype}) to "
                      f"{args.output}")  # fmt: skip
        else:
            with JsonOutput(array=args.json) as out:  # closed however the command ends: valid JSON
                for block, chunk in _blocks_with_texts(encoder, texts, progress):
                    for text, v in zip(chunk, block, strict=True):
                        out.write({"text": text, "embedding": v.tolist()})
    finally:
        if progress is not None:
            progress.close()
        if hasattr(encoder, "close"):
            encoder.close()
    return EXIT_OK


def _blocks_with_texts(encoder, texts, progress):
    """Blocks of embeddings with the texts they came from: the texts are kept from when the encoder reads
    them until their block comes back (a few chunks at most)."""
    seen: deque = deque()

    def tap():
        for t in texts:
            seen.append(t)
            yield t

    for block in encoder.encode_chunks(tap(), progress):
        yield block, [seen.popleft() for _ in range(len(block))]


def _dask_encoder(args, options):
    try:
        from ..pipelines.distributed import DaskEncoder
    except ImportError as e:  # pragma: no cover - the module imports nothing optional at top level
        raise UserError(str(e)) from None
    address = None if args.dask == "local" else args.dask
    try:
        return DaskEncoder(args.model, address=address, n_workers=args.dask_workers, **options)
    except ImportError as e:
        raise UserError(str(e)) from None
    except OSError as e:  # the scheduler could not be reached
        raise UserError(f"cannot connect to the Dask scheduler at {address}: {e}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="texts to embeddings (.npy / .safetensors), streamed; --dask to scale out",
        description=wrap(
            "Embed texts with any ErnieM checkpoint (a head, if any, is ignored). Texts come as "
            "arguments, from --input (.txt: one per line; .jsonl: see --field) or stdin, and are read as a stream: "
            "memory stays flat on inputs larger than RAM. With -o the embeddings go to a file: .npy ([N, H] float32) "
            "or .safetensors (tensor 'embeddings' [N, H]; with --pooling last, 'last_hidden_state' [T, H] of all "
            "tokens and 'offsets' [N+1]: text i is rows offsets[i]:offsets[i+1]). Without -o each text's embedding "
            'is printed as JSON Lines ({"text", "embedding"}), or one JSON array with --json.'
        ),
        epilog="exit codes: 0 success; 1 bad input or checkpoint (one line on stderr); 2 bad command line.\n"
        "example: erniem-np encode ckpt/ --input texts.txt -o emb.npy --pooling mean\n"
        "         erniem-np encode ckpt/ --input texts.txt -o emb.npy --dask tcp://scheduler:8786",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    add_input_options(p)
    p.add_argument("--output", "-o", metavar="OUT", help="OUT.npy or OUT.safetensors (default: print JSON)")
    p.add_argument("--pooling", choices=("pooled", "cls", "mean", "last"), default="pooled",
                   help="pooled: the pooler's tanh(dense([CLS])) (default); cls: [CLS]'s last hidden state; mean: "
                   "mean over the text's tokens (padding excluded); last: every token's last hidden state")  # fmt: skip
    p.add_argument("--normalize", action="store_true", help="scale each embedding to unit L2 norm")
    p.add_argument("--chunk-size", type=int, default=1024, help="texts read at a time, sorted by length into "
                   "batches (default 1024); a Dask task each with --dask")  # fmt: skip
    p.add_argument("--dask", nargs="?", const="local", metavar="ADDRESS", help="run on Dask: alone, a local "
                   "cluster; with a scheduler address (tcp://host:8786), that cluster (MODEL must be readable at "
                   "the same path on every worker)")  # fmt: skip
    p.add_argument("--dask-workers", type=int, help="workers of the local cluster (default: one per core)")
    p.add_argument("--json", action="store_true", help="print JSON: the summary with -o, else one array")
    p.set_defaults(func=run)
