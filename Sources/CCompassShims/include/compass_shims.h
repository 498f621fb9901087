// Linux calls that Swift's Glibc module does not import (they need _GNU_SOURCE or extra headers).
#ifndef COMPASS_SHIMS_H
#define COMPASS_SHIMS_H

/// pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0)); returns 0 or -1 with errno set.
int compass_pipe_cloexec(int fds[2], int nonblocking);
/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); returns the fd or -1 with errno set.
int compass_eventfd(void);
/// posix_spawn_file_actions_addchdir_np where glibc has it (2.29+); returns an errno value.
int compass_spawn_addchdir(void *actions, const char *path);
/// The POSIX_SPAWN_SETSID flag, or 0 where glibc lacks it.
int compass_spawn_setsid_flag(void);

#endif
