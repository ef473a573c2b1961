"""Load files the way relaydiff does, inside limits, and report each outcome as JSON (tests only).

    python tests/load_sandbox.py CASES.json OUT.json

CASES.json: [{"path": ..., "entry": "safe_load" | "import_network" | "load_checkpoint"}, ...]. The
address space is limited to AS_LIMIT before anything is imported, so a memory bomb is a MemoryError
here (reported as "crash") instead of an exhausted CI machine; the parent adds a wall-clock
timeout. OUT.json: {"results": [{"path", "outcome": "loaded" | error type name, "module",
"documented": bool, "names_file": bool, "message"}], "peak_rss_kib", "seconds"}.
"""

import json
import resource
import sys
import time

AS_LIMIT = 2 << 30  # torch and relaydiff imported take ~0.65 GiB of address space

resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
sys.path.insert(0, sys.argv[3] if len(sys.argv) > 3 else ".")

from relaydiff import checkpoint, importer, safe_load  # noqa: E402

ENTRIES = {"safe_load": lambda p: safe_load.load(p, what="file"),
           "import_network": importer.import_network,
           "load_checkpoint": checkpoint.load_checkpoint}


def main():
    cases = json.load(open(sys.argv[1]))
    results, t0 = [], time.perf_counter()
    for case in cases:
        try:
            ENTRIES[case["entry"]](case["path"])
            out = {"outcome": "loaded", "documented": True, "names_file": True, "message": ""}
        except safe_load.FileRefused as exc:  # FileTooLarge and UnsafePickleError are FileRefused too
            out = {"outcome": type(exc).__name__, "documented": True, "message": str(exc)}
        except (ValueError, FileNotFoundError) as exc:  # the entry points' own checks (config, shapes)
            out = {"outcome": type(exc).__name__, "documented": case["entry"] != "safe_load",
                   "message": str(exc)}
        except BaseException as exc:  # noqa: BLE001  (a crash the test reports)
            out = {"outcome": type(exc).__name__, "documented": False, "message": str(exc)[:300]}
        out.setdefault("names_file", case["path"] in out["message"] and "\n" not in out["message"])
        results.append({"path": case["path"], **out})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump({"results": results, "peak_rss_kib": peak, "seconds": time.perf_counter() - t0}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
