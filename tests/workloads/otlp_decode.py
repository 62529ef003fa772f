"""Decodes OTLP profiles requests with the official bindings (PyPI opentelemetry-proto) and
prints what the tests compare, as JSON: per profile its sample type and value total, and per
sample its attributes and frames (function, file, line; leaf first).

Usage: otlp_decode.py FILE...   (each an ExportProfilesServiceRequest, binary protobuf)
"""
import json
import sys

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)


def any_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def decode(path):
    req = ExportProfilesServiceRequest()
    with open(path, "rb") as f:
        req.ParseFromString(f.read())
    d = req.dictionary
    strings = d.string_table
    # The proto's rule: every table starts with its zero value.
    assert strings[0] == "", "string_table[0] must be empty"
    assert len(d.stack_table[0].location_indices) == 0, "stack_table[0] must be empty"
    out = {"resource": {}, "profiles": []}
    for rp in req.resource_profiles:
        for kv in rp.resource.attributes:
            out["resource"][kv.key] = any_value(kv.value)
        for sp in rp.scope_profiles:
            out["scope"] = sp.scope.name
            for p in sp.profiles:
                samples = []
                for s in p.samples:
                    attrs = {}
                    for i in s.attribute_indices:
                        a = d.attribute_table[i]
                        attrs[strings[a.key_strindex]] = any_value(a.value)
                    frames = []
                    for li in d.stack_table[s.stack_index].location_indices:
                        for line in d.location_table[li].lines:
                            fn = d.function_table[line.function_index]
                            frames.append({
                                "function": strings[fn.name_strindex],
                                "file": strings[fn.filename_strindex],
                                "first_line": fn.start_line,
                                "line": line.line,
                            })
                    samples.append({"values": list(s.values), "attributes": attrs, "frames": frames})
                out["profiles"].append({
                    "type": strings[p.sample_type.type_strindex],
                    "unit": strings[p.sample_type.unit_strindex],
                    "period": p.period,
                    "period_type": strings[p.period_type.type_strindex],
                    "duration_nano": p.duration_nano,
                    "time_unix_nano": p.time_unix_nano,
                    "total": sum(v for s in p.samples for v in s.values),
                    "samples": samples,
                })
    return out


json.dump([decode(p) for p in sys.argv[1:]], sys.stdout)
