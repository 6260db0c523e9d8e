"""scripts/bench-vpn as a Python module, for the scripts that reuse its rig (ab-vpn,
hot-path): its file name has a dash and no .py, so a plain import cannot load it."""
import importlib.machinery, importlib.util, os


def load():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-vpn")
    loader = importlib.machinery.SourceFileLoader("bench_vpn", path)
    spec = importlib.util.spec_from_loader("bench_vpn", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
