// jemalloc's compiled-in options, read when the process starts (docs/decisions/0009-huge-pages.md).
//
// A 4 KiB page fault costs 10-20 us on the VMs we run on, so memory that is freed and touched
// again should not go back to the kernel, and large blocks should be huge pages: restore's range
// buffers, S3 response bodies and the loaded index took ~130k faults (~2 CPU-seconds) per 7 GB
// restore with glibc's malloc, ~8k with these options. MALLOC_CONF in the environment still
// overrides them.
extern "C" {
// NOLINTNEXTLINE: the name is jemalloc's
__attribute__((visibility("default"))) const char* malloc_conf = "thp:always,metadata_thp:auto";
}
