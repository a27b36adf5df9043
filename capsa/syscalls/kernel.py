"""The kernel seam: one object whose methods are every call capsa makes that changes kernel state.

Apply code receives a Kernel (or capsa.syscalls.fake.FakeKernel in unit tests) as a parameter and
never calls libc itself. The areas live in their own modules; this file only joins them.
"""
from capsa.syscalls.cgroup import CgroupCalls
from capsa.syscalls.fs import FsCalls
from capsa.syscalls.proc import ProcCalls
from capsa.syscalls.security import SecurityCalls


class Kernel(FsCalls, ProcCalls, SecurityCalls, CgroupCalls):
    """The real kernel."""
