// NVML through dlopen, so compass runs where there is no NVIDIA driver (CPU mode) and needs no
// CUDA headers to build. The few types used are declared here as NVML's header defines them.
#include "compass_shims.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;

static nvmlReturn_t (*p_init)(void);
static nvmlReturn_t (*p_count)(unsigned int *);
static nvmlReturn_t (*p_handle)(unsigned int, nvmlDevice_t *);
static nvmlReturn_t (*p_uuid)(nvmlDevice_t, char *, unsigned int);
static nvmlReturn_t (*p_name)(nvmlDevice_t, char *, unsigned int);
static nvmlReturn_t (*p_memory)(nvmlDevice_t, nvmlMemory_t *);
static nvmlReturn_t (*p_utilization)(nvmlDevice_t, nvmlUtilization_t *);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int loaded = -1;
static char load_error[256];

static void load(void) {
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(load_error, sizeof load_error, "libnvidia-ml.so.1 not found (no NVIDIA driver)");
        return;
    }
    p_init = (nvmlReturn_t (*)(void))dlsym(lib, "nvmlInit_v2");
    p_count = (nvmlReturn_t (*)(unsigned int *))dlsym(lib, "nvmlDeviceGetCount_v2");
    p_handle = (nvmlReturn_t (*)(unsigned int, nvmlDevice_t *))dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
    p_uuid = (nvmlReturn_t (*)(nvmlDevice_t, char *, unsigned int))dlsym(lib, "nvmlDeviceGetUUID");
    p_name = (nvmlReturn_t (*)(nvmlDevice_t, char *, unsigned int))dlsym(lib, "nvmlDeviceGetName");
    p_memory = (nvmlReturn_t (*)(nvmlDevice_t, nvmlMemory_t *))dlsym(lib, "nvmlDeviceGetMemoryInfo");
    p_utilization = (nvmlReturn_t (*)(nvmlDevice_t, nvmlUtilization_t *))dlsym(lib, "nvmlDeviceGetUtilizationRates");
    if (!p_init || !p_count || !p_handle || !p_uuid || !p_name || !p_memory || !p_utilization) {
        snprintf(load_error, sizeof load_error, "libnvidia-ml.so.1 lacks an expected function");
        return;
    }
    nvmlReturn_t rc = p_init();
    if (rc != 0) {
        snprintf(load_error, sizeof load_error, "nvmlInit failed with NVML error %d", rc);
        return;
    }
    loaded = 0;
}

int compass_nvml_load(char *error, int error_length) {
    pthread_once(&once, load);
    if (loaded != 0 && error && error_length > 0) snprintf(error, (size_t)error_length, "%s", load_error);
    return loaded;
}

int compass_nvml_device_count(void) {
    unsigned int n = 0;
    if (compass_nvml_load(NULL, 0) != 0 || p_count(&n) != 0) return -1;
    return (int)n;
}

int compass_nvml_device_info(unsigned int index, char *uuid, int uuid_length, char *name, int name_length,
                             unsigned long long *memory_used, unsigned long long *memory_total,
                             unsigned int *utilization) {
    if (compass_nvml_load(NULL, 0) != 0) return -1;
    nvmlDevice_t device;
    nvmlReturn_t rc = p_handle(index, &device);
    if (rc != 0) return rc;
    if ((rc = p_uuid(device, uuid, (unsigned int)uuid_length)) != 0) return rc;
    if ((rc = p_name(device, name, (unsigned int)name_length)) != 0) return rc;
    nvmlMemory_t memory;
    if ((rc = p_memory(device, &memory)) != 0) return rc;
    *memory_used = memory.used;
    *memory_total = memory.total;
    nvmlUtilization_t rates = {0, 0};
    *utilization = p_utilization(device, &rates) == 0 ? rates.gpu : 0;
    return 0;
}
