/* tests/fuzz/fuzz_export.c: the compressed-model loader (net/export.c).
 *
 * Input: byte 0 selects the form. 0: the rest is the inflated payload (ARCH, TENS, STAT,
 * blobs); the harness deflates it and writes a correct EVWZ container (header, lengths,
 * CRC) around it, so the fuzzer works on the parser rather than on zlib. 1: the rest is a
 * whole file, its CRC fixed. Properties: never a crash, leak or undefined behaviour; a
 * failure has a reason naming the file; a loaded net is consistent and, if small, runs. */
#include <string.h>
#include <zlib.h>

#include "net/codec.h"
#include "net/net.h"
#include "tests/fuzz/fuzz_common.h"
#include "tests/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const int form = data[0] & 1;
    data++;
    size--;
    unsigned char *file;
    size_t flen;
    if (form == 0) {
        file = evwz_file(data, size, 1, 1, &flen);
        FUZZ_CHECK(file);
    } else {
        file = malloc(size + 4);
        FUZZ_CHECK(file);
        memcpy(file, data, size);
        flen = size + 4;
        uint32_t crc = net_crc32(file, flen - 4);
        memcpy(file + flen - 4, &crc, 4);
    }
    const char *path = fuzz_file(file, flen);
    free(file);

    struct net *n = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    char err[1024] = "";
    if (net_export_load(path, &n, &bl, &nbl, err, sizeof err) < 0) {
        FUZZ_CHECK(err[0] && strstr(err, path) && n == NULL);
        return 0;
    }
    fuzz_check_net(n);
    ckpt_blobs_free(bl, nbl);
    net_destroy(n);
    return 0;
}
