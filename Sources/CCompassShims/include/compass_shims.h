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

/// NVML, loaded at run time from libnvidia-ml.so.1 (absent on machines without an NVIDIA driver).
/// compass_nvml_load returns 0 when NVML is usable, else -1 with a reason in `error`.
int compass_nvml_load(char *error, int error_length);
/// The number of GPUs NVML sees, or -1.
int compass_nvml_device_count(void);
/// One GPU's identity and state; returns 0, or an NVML error code. Strings are NUL-terminated.
int compass_nvml_device_info(unsigned int index, char *uuid, int uuid_length, char *name, int name_length,
                             unsigned long long *memory_used, unsigned long long *memory_total,
                             unsigned int *utilization);

#endif
