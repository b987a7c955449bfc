/* tests/fuzz/fuzz_config.c: the config loader and PATCH path (daemon/config.c).
 *
 * Input: JSON text. Properties: loading never crashes; a config that loads serialises to
 * text that loads again to the same text (cfg_to_string is a fixed point); the same input
 * as a runtime PATCH of each patchable section either fails with a reason and leaves the
 * config bit-identical, or yields a config that validates and serialises. */
#include <string.h>

#include "daemon/config.h"
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct dmn_config base, c, d;
    static int have_base;
    static char *base_text;
    char err[512];
    if (!have_base) {
        if (cfg_load_file(&base, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof err) < 0) {
            fprintf(stderr, "%s\n", err);
            abort();
        }
        FUZZ_CHECK((base_text = cfg_to_string(&base, 0)) != NULL);
        have_base = 1;
    }
    err[0] = 0;
    if (cfg_load_json(&c, (const char *)data, size, err, sizeof err) == 0) {
        char *t1 = cfg_to_string(&c, 0);
        FUZZ_CHECK(t1);
        FUZZ_CHECK(cfg_load_json(&d, t1, strlen(t1), err, sizeof err) == 0);
        char *t2 = cfg_to_string(&d, 0);
        FUZZ_CHECK(t2 && strcmp(t1, t2) == 0);
        cJSON_free(t1);
        cJSON_free(t2);
    } else {
        FUZZ_CHECK(err[0] != 0);
    }
    cJSON *obj = cJSON_ParseWithLength((const char *)data, size);
    static const char *const sections[] = {"adapt", "train", NULL};
    for (int i = 0; obj && i < 3; i++) {
        c = base;
        err[0] = 0;
        if (cfg_patch(&c, sections[i], obj, CFG_RUNTIME, err, sizeof err) == 0) {
            FUZZ_CHECK(cfg_validate(&c, err, sizeof err) == 0);
            char *t = cfg_to_string(&c, 0);
            FUZZ_CHECK(t);
            cJSON_free(t);
        } else {
            char *t = cfg_to_string(&c, 0); // a refused patch changes nothing
            FUZZ_CHECK(err[0] != 0 && t && strcmp(t, base_text) == 0);
            cJSON_free(t);
        }
    }
    cJSON_Delete(obj);
    return 0;
}
