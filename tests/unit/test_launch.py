"""Pieces of the create choreography that need no root: the import seal and the preload list."""
import os
import sys

from capsa.runtime import launch


def _in_child(fn):
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(fn())
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_sealed_child_refuses_any_new_import():
    def child():
        launch._seal_imports()
        sys.modules.pop("colorsys", None)
        try:
            import colorsys  # noqa: F401  (stdlib, never imported by capsa)
        except ImportError as err:
            return 0 if "runtime is inside the container" in str(err) else 2
        return 1
    assert _in_child(child) == 0


def test_sealed_child_still_uses_what_was_imported():
    def child():
        launch._preload()
        launch._seal_imports()
        from capsa.runtime.apply import rootfs, security, tty  # noqa: F401  (preloaded)
        import fcntl  # noqa: F401
        return 0
    assert _in_child(child) == 0


def test_everything_the_child_imports_is_preloaded():
    """The child's code only imports modules named in _PRELOAD or already loaded by then."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(launch))
    child_funcs = {"_child_main", "_child_namespaces", "_init_main", "_enter_cgroup",
                   "_open_proc_self", "_apply_sysctl", "_wait_for_start", "_join_keyring"}
    needed = []  # (module, attribute or None)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in child_funcs:
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    needed.extend((inner.module, alias.name) for alias in inner.names)
                elif isinstance(inner, ast.Import):
                    needed.extend((alias.name, None) for alias in inner.names)
    assert needed, "found no imports in the child's functions: the test looks at nothing"
    launch._preload()
    missing = []
    for module, name in needed:
        if module not in sys.modules:
            missing.append(module)
        elif name is not None and "%s.%s" % (module, name) not in sys.modules and \
                not hasattr(sys.modules[module], name):
            missing.append("%s.%s" % (module, name))
    assert missing == []
