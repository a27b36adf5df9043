"""The caller's terminal for a foreground `run` or `exec` with a pty and no --console-socket:
relay bytes between our stdio and the pty master, put our terminal in raw mode meanwhile, and
follow window size changes (SIGWINCH).

Only `run`/`exec` in the foreground import this. Imports os, select, termios, fcntl, _signal.
"""
import os
import select
import struct

TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414


def copy_window_size(source_fd, master):
    import fcntl
    try:
        size = fcntl.ioctl(source_fd, TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return
    if struct.unpack("HHHH", size)[:2] != (0, 0):
        fcntl.ioctl(master, TIOCSWINSZ, size)


def relay(master, is_done):
    """Copy stdin -> master and master -> stdout until the master hangs up (the last process
    holding the pty slave exited) or `is_done()` says the container is gone."""
    import _signal
    import termios
    stdin, stdout = 0, 1
    saved = None
    if os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        raw = termios.tcgetattr(stdin)
        raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
        raw[1] &= ~termios.OPOST
        raw[2] = (raw[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        raw[6][termios.VMIN] = 1
        raw[6][termios.VTIME] = 0
        termios.tcsetattr(stdin, termios.TCSAFLUSH, raw)
        copy_window_size(stdin, master)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous_wakeup = _signal.set_wakeup_fd(wake_write)
    _signal.signal(28, lambda signum, frame: None)   # SIGWINCH: wakes the loop through the pipe
    _signal.signal(17, lambda signum, frame: None)   # SIGCHLD
    watched = [master, wake_read]
    if stdin_open(stdin):
        watched.append(stdin)
    try:
        while True:
            try:
                ready, _, _ = select.select(watched, [], [], 1.0)
            except InterruptedError:
                continue
            if wake_read in ready:
                while _drain(wake_read):
                    pass
                if saved is not None:
                    copy_window_size(stdin, master)
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    return
                _write_all(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 65536)
                if data:
                    _write_all(master, data)
                else:
                    watched.remove(stdin)
            if not ready and is_done():
                return
    finally:
        _signal.set_wakeup_fd(previous_wakeup)
        os.close(wake_read)
        os.close(wake_write)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSAFLUSH, saved)


def stdin_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _drain(fd):
    try:
        return bool(os.read(fd, 512))
    except OSError:
        return False


def _write_all(fd, data):
    while data:
        written = os.write(fd, data)
        data = data[written:]
