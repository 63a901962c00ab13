// s3torch._crt.NativeClient: the core's Client and its operations. Converts arguments, holds
// caller buffers for as long as the CRT uses them and waits with the GIL released; what to
// request (whole-object strategy, single or multipart PUT) is decided by the core.
#include "bindings.h"
#include "buffers.h"
#include "bytes_get.h"
#include "bytes_put.h"
#include "handles.h"

#include "s3torch/client.h"
#include "s3torch/get.h"
#include "s3torch/get_stream.h"
#include "s3torch/objects.h"
#include "s3torch/presign.h"
#include "s3torch/put.h"
#include "s3torch/request.h"
#include "s3torch/uploads.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace s3torch_py {

namespace {

using namespace s3torch;

std::optional<ByteRange> make_range(std::optional<uint64_t> offset, std::optional<uint64_t> length, size_t capacity) {
    if (!offset && !length) return std::nullopt;
    return ByteRange{offset.value_or(0), length ? *length : capacity};
}

class NativeClient {
  public:
    explicit NativeClient(ClientConfig config) : client_(Client::create(std::move(config))) {}

    std::unique_ptr<GetHandle> start_get_into(const std::string &bucket, const std::string &key, py::handle buffer,
                                              std::optional<uint64_t> offset, std::optional<uint64_t> length,
                                              const std::string &if_match) {
        auto buf = HeldBuffer::acquire(buffer, true, {"GetObject", bucket, key});
        auto range = make_range(offset, length, buf->size());
        std::shared_ptr<GetInto> t;
        {
            py::gil_scoped_release nogil;
            t = GetInto::start_get(client_, bucket, key, range, buf->data(), buf->size(), if_match);
        }
        return std::make_unique<GetHandle>(std::move(t), std::move(buf));
    }

    size_t get_into(const std::string &bucket, const std::string &key, py::handle buffer,
                    std::optional<uint64_t> offset, std::optional<uint64_t> length, const std::string &if_match) {
        return start_get_into(bucket, key, buffer, offset, length, if_match)->wait(/*populate=*/true);
    }

    // items: (key, offset or None, length or None, buffer). All start at once; returns bytes
    // received per item. If any fails, the rest are cancelled and the first error raised.
    std::vector<size_t> get_into_many(const std::string &bucket, py::sequence items) {
        std::vector<std::unique_ptr<GetHandle>> handles;
        handles.reserve(py::len(items));
        try {
            for (py::handle it : items) {
                auto tup = it.cast<py::tuple>();
                if (tup.size() != 4)
                    throw_invalid("each item must be (key, offset, length, buffer)", {"GetObject", bucket, ""});
                handles.push_back(start_get_into(bucket, tup[0].cast<std::string>(), tup[3],
                                                 tup[1].cast<std::optional<uint64_t>>(),
                                                 tup[2].cast<std::optional<uint64_t>>(), std::string()));
            }
            std::vector<size_t> out;
            out.reserve(handles.size());
            for (auto &h : handles) out.push_back(h->wait());
            return out;
        } catch (...) {
            {
                py::gil_scoped_release nogil;
                for (auto &h : handles) h->cancel();
                for (auto &h : handles) h->transfer().cancel_and_wait();
            }
            throw;
        }
    }

    // GET into a new bytes object (filled before Python ever sees it): one copy fewer than
    // GET into a buffer + bytes(buffer). `length` None: to the end of the object, whose size
    // is `size_hint`, else learned by the core's whole-object GET (offset 0) or a HEAD. A hint
    // the answer proves stale (a listing older than the object) is not trusted: the bytes to
    // the object's real end are read again, from the version that answered. `if_match` (an
    // ETag, or empty): fail with S3ObjectChangedError unless the object is that version.
    py::bytes get_bytes(const std::string &bucket, const std::string &key, uint64_t offset,
                        std::optional<uint64_t> length, std::optional<uint64_t> size_hint,
                        const std::string &if_match) {
        // A hint of 0 (an object listed empty) is read too: it may have been written since.
        if (!length && (!size_hint || *size_hint == 0) && offset == 0)
            return run_to_end(*BytesGet::whole(client_, bucket, key, if_match));
        uint64_t n;
        if (length) {
            n = *length;
        } else {
            uint64_t size = size_hint ? *size_hint : head(bucket, key, true, false).size;
            n = size > offset ? size - offset : 0;
        }
        if (n == 0) return py::bytes();
        return run_to_end(*BytesGet::range(client_, bucket, key, offset, n, !length, if_match));
    }

    // get_bytes of a whole object (offset 0, no length) or of `length` (> 0) bytes from
    // `offset`, in steps for an event loop (BytesGet): nothing waits here.
    std::unique_ptr<BytesGet> start_bytes(const std::string &bucket, const std::string &key, uint64_t offset,
                                          std::optional<uint64_t> length, const std::string &if_match) {
        if (!length) {
            if (offset != 0) throw_invalid("start_bytes to the end needs offset 0", {"GetObject", bucket, key});
            return BytesGet::whole(client_, bucket, key, if_match);
        }
        if (*length == 0) throw_invalid("start_bytes of 0 bytes", {"GetObject", bucket, key});
        return BytesGet::range(client_, bucket, key, offset, *length, false, if_match);
    }

    // put of at most a part, started for an event loop (BytesPut); None for more.
    std::unique_ptr<BytesPut> start_put(const std::string &bucket, const std::string &key, py::handle data,
                                        bool exclusive) {
        return BytesPut::start(client_, bucket, key, data, exclusive);
    }

    std::unique_ptr<StreamHandle> get_stream(const std::string &bucket, const std::string &key,
                                             std::optional<uint64_t> offset, std::optional<uint64_t> length,
                                             uint64_t read_ahead, const std::string &if_match) {
        if (length && !offset) offset = 0;
        std::optional<ByteRange> range;
        if (offset) {
            if (!length) throw_invalid("a streaming GET with an offset needs a length", {"GetObject", bucket, key});
            range = ByteRange{*offset, *length};
        }
        py::gil_scoped_release nogil;
        return std::make_unique<StreamHandle>(
            GetStream::start_stream(client_, bucket, key, range, read_ahead, if_match));
    }

    std::string put(const std::string &bucket, const std::string &key, py::handle data,
                    const std::string &storage_class, bool exclusive) {
        auto buf = HeldBuffer::acquire(data, false, {"PutObject", bucket, key});
        // The handle aborts the upload if this fails or is interrupted.
        return upload(bucket, key, storage_class, exclusive, 0)->put(*buf);
    }

    std::unique_ptr<UploadHandle> upload(const std::string &bucket, const std::string &key,
                                         const std::string &storage_class, bool exclusive, uint64_t size_hint) {
        PutOptions opts;
        opts.storage_class = storage_class;
        opts.if_none_match = exclusive;
        opts.size_hint = size_hint;
        return std::make_unique<UploadHandle>(std::make_unique<Upload>(client_, bucket, key, opts));
    }

    std::string presign(const std::string &bucket, const std::string &key, int64_t expires_s,
                        std::optional<int64_t> at_s, const std::string &method) {
        std::shared_ptr<Presign> p;
        {
            py::gil_scoped_release nogil;  // may build the CRT client
            p = Presign::start(client_, method, bucket, key, expires_s, at_s);
        }
        // Interrupted: the signer finishes on its own (its callback holds the Presign).
        wait_until([&p](int64_t ms) { return p->wait_for(ms); }, [] {});
        return p->url();
    }

    ObjectInfo head(const std::string &bucket, const std::string &key, bool for_read, bool checksum) {
        auto req = start_head(client_, bucket, key, for_read, checksum);
        wait_transfer(*req);
        return head_result(*req);
    }

    std::vector<uint64_t> object_part_sizes(const std::string &bucket, const std::string &key, int max_parts) {
        std::vector<uint64_t> sizes;
        std::string marker;
        // Pages until the last; a page adds at least one part, and no object has more than
        // kMaxObjectParts (parse_object_parts_body refuses more).
        for (size_t page = 0; page <= s3torch::kMaxObjectParts; ++page) {
            auto req = s3torch::start_object_parts(client_, bucket, key, marker, max_parts);
            wait_transfer(*req);  // interruptible
            marker = s3torch::object_parts_result(*req, sizes);
            if (marker.empty()) break;
        }
        return sizes;
    }

    ListPage list_objects(const std::string &bucket, const std::string &prefix, const std::string &delimiter,
                          int max_keys, const std::string &continuation_token, const std::string &start_after) {
        auto req = start_list(client_, bucket, prefix, delimiter, max_keys, continuation_token, start_after);
        wait_transfer(*req);
        py::gil_scoped_release nogil;
        return list_result(*req);
    }

    void delete_object(const std::string &bucket, const std::string &key) {
        auto req = start_delete(client_, bucket, key);
        wait_transfer(*req);
        req->raise_if_failed();
    }

    // One DeleteObjects of up to MAX_DELETE_KEYS keys: the S3Exception of each key not deleted
    // (its .key names it); raises the request's when the request itself failed.
    py::list delete_objects(const std::string &bucket, const std::vector<std::string> &keys) {
        auto req = start_delete_objects(client_, bucket, keys);
        wait_transfer(*req);
        std::vector<s3torch::S3Error> refused;
        {
            py::gil_scoped_release nogil;
            refused = s3torch::delete_objects_result(*req, keys);
        }
        py::list out;
        for (const auto &e : refused) out.append(exception_object(e));
        return out;
    }

    void copy_object(const std::string &src_bucket, const std::string &src_key, const std::string &dst_bucket,
                     const std::string &dst_key) {
        auto req = start_copy(client_, src_bucket, src_key, dst_bucket, dst_key);
        wait_transfer(*req);
        req->raise_if_failed();
    }

    int64_t in_flight() const { return client_->in_flight(); }

    // Incomplete multipart uploads under `prefix`: (key, upload_id, initiated) tuples.
    std::vector<std::tuple<std::string, std::string, std::string>> list_multipart_uploads(const std::string &bucket,
                                                                                          const std::string &prefix) {
        // The GIL is held but while each page is awaited (wait_transfer: Ctrl-C cancels it).
        std::vector<MultipartUploadInfo> found =
            s3torch::list_multipart_uploads(client_, bucket, prefix, [](Transfer &t) { wait_transfer(t); });
        std::vector<std::tuple<std::string, std::string, std::string>> out;
        for (auto &u : found) out.emplace_back(u.key, u.upload_id, u.initiated);
        return out;
    }

    bool abort_multipart_upload(const std::string &bucket, const std::string &key, const std::string &upload_id,
                                double wait_s) {
        py::gil_scoped_release nogil;  // Ctrl-C ends the wait: the upload is then remembered
        return s3torch::abort_multipart_upload(client_, bucket, key, encode_param(upload_id), to_ms(wait_s),
                                               check_interrupt);
    }

    // Abort every (key, upload_id) of `uploads` in `bucket` at once (s3torch::abort_uploads):
    // one item per upload, True (gone), False (not reached: remembered), or the S3Exception
    // that refused it. Ctrl-C ends the wait; the uploads not settled then are remembered.
    py::list abort_multipart_uploads(const std::string &bucket,
                                     const std::vector<std::pair<std::string, std::string>> &uploads, double wait_s) {
        std::vector<Client::PendingAbort> batch;
        for (auto &[key, upload_id] : uploads) batch.push_back({bucket, key, encode_param(upload_id)});
        std::vector<s3torch::AbortOutcome> outcomes;
        {
            py::gil_scoped_release nogil;
            outcomes = s3torch::abort_uploads(client_, batch, to_ms(wait_s), check_interrupt);
        }
        py::list out;
        for (auto &o : outcomes) {
            if (!o.refused) {
                out.append(py::bool_(o.gone));
                continue;
            }
            try {
                std::rethrow_exception(o.refused);
            } catch (const S3Error &e) {
                out.append(exception_object(e));
            }
        }
        return out;
    }

    // Uploads whose abort an outage prevented: (bucket, key, upload_id) tuples.
    std::vector<std::tuple<std::string, std::string, std::string>> pending_aborts(bool retry, double wait_s) {
        std::vector<Client::PendingAbort> left;
        {
            py::gil_scoped_release nogil;
            left = retry ? retry_pending_aborts(client_, to_ms(wait_s), check_interrupt) : client_->pending_aborts();
        }
        std::vector<std::tuple<std::string, std::string, std::string>> out;
        for (auto &p : left) out.emplace_back(p.bucket, p.key, decode_param(p.upload_id));
        return out;
    }
    const ClientConfig &config() const { return client_->config(); }
    std::shared_ptr<Client> client() const { return client_; }

  private:
    static int64_t to_ms(double seconds) {
        if (!(seconds >= 0.0) || seconds > 86400.0) throw_invalid("wait_s must be between 0 and 86400");
        return static_cast<int64_t>(seconds * 1000.0);
    }

    std::shared_ptr<Client> client_;
};

}  // namespace

void register_client(py::module_ &m) {
    py::class_<ObjectInfo>(m, "ObjectInfo")
        .def_readonly("key", &ObjectInfo::key)
        .def_readonly("size", &ObjectInfo::size)
        .def_readonly("etag", &ObjectInfo::etag)
        .def_readonly("last_modified", &ObjectInfo::last_modified)
        .def_readonly("storage_class", &ObjectInfo::storage_class)
        .def_readonly("checksum_algorithm", &ObjectInfo::checksum_algorithm)
        .def_readonly("checksum", &ObjectInfo::checksum)
        .def_readonly("checksum_type", &ObjectInfo::checksum_type)
        .def(py::pickle(
            [](const ObjectInfo &o) {
                return py::make_tuple(o.key, o.size, o.etag, o.last_modified, o.storage_class, o.checksum_algorithm,
                                      o.checksum, o.checksum_type);
            },
            [](py::tuple t) {
                ObjectInfo o;
                o.key = t[0].cast<std::string>();
                o.size = t[1].cast<uint64_t>();
                o.etag = t[2].cast<std::string>();
                o.last_modified = t[3].cast<std::string>();
                o.storage_class = t[4].cast<std::string>();
                if (t.size() >= 8) {  // pickled by a version with checksums
                    o.checksum_algorithm = t[5].cast<std::string>();
                    o.checksum = t[6].cast<std::string>();
                    o.checksum_type = t[7].cast<std::string>();
                }
                return o;
            }))
        .def("__repr__", [](const ObjectInfo &o) {
            return "ObjectInfo(key=" + std::string(py::repr(py::str(o.key))) + ", size=" + std::to_string(o.size) +
                   ", etag=" + std::string(py::repr(py::str(o.etag))) + ")";
        });

    py::class_<ListPage>(m, "ListPage")
        .def_readonly("objects", &ListPage::objects)
        .def_readonly("object_info", &ListPage::objects)
        .def_readonly("common_prefixes", &ListPage::common_prefixes)
        .def_readonly("next_continuation_token", &ListPage::next_continuation_token)
        .def_readonly("is_truncated", &ListPage::is_truncated);

    py::class_<NativeClient>(m, "NativeClient")
        .def(py::init<ClientConfig>(), py::arg("config"))
        .def("get_into", &NativeClient::get_into, py::arg("bucket"), py::arg("key"), py::arg("buffer"),
             py::arg("offset") = py::none(), py::arg("length") = py::none(), py::arg("if_match") = "")
        .def("start_get_into", &NativeClient::start_get_into, py::arg("bucket"), py::arg("key"), py::arg("buffer"),
             py::arg("offset") = py::none(), py::arg("length") = py::none(), py::arg("if_match") = "")
        .def_static("wait_any", &wait_any, py::arg("handles"), py::arg("timeout") = py::none(),
                    "_crt.wait_any: the first of the GETs this client started to finish.")
        .def("get_into_many", &NativeClient::get_into_many, py::arg("bucket"), py::arg("items"))
        .def("get_bytes", &NativeClient::get_bytes, py::arg("bucket"), py::arg("key"), py::arg("offset") = 0,
             py::arg("length") = py::none(), py::arg("size_hint") = py::none(), py::arg("if_match") = "")
        .def("start_bytes", &NativeClient::start_bytes, py::arg("bucket"), py::arg("key"), py::arg("offset") = 0,
             py::arg("length") = py::none(), py::arg("if_match") = "")
        .def("start_put", &NativeClient::start_put, py::arg("bucket"), py::arg("key"), py::arg("data"), py::kw_only(),
             py::arg("exclusive") = false)
        .def("get_stream", &NativeClient::get_stream, py::arg("bucket"), py::arg("key"), py::arg("offset") = py::none(),
             py::arg("length") = py::none(), py::arg("read_ahead") = 0, py::arg("if_match") = "")
        .def("put", &NativeClient::put, py::arg("bucket"), py::arg("key"), py::arg("data"),
             py::arg("storage_class") = "", py::kw_only(), py::arg("exclusive") = false)
        .def("upload", &NativeClient::upload, py::arg("bucket"), py::arg("key"), py::arg("storage_class") = "",
             py::kw_only(), py::arg("exclusive") = false, py::arg("size_hint") = 0,
             "A streaming upload. size_hint: the object's size, or about it, when known ahead (0: not "
             "known): one past what S3's 10,000 parts of the configured part size hold gets larger parts; "
             "without it, a write past that limit raises S3InvalidArgumentError and aborts the upload.")
        .def("presign", &NativeClient::presign, py::arg("bucket"), py::arg("key"), py::arg("expires_s"),
             py::arg("at_s") = py::none(), py::arg("method") = "GET",
             "A presigned URL (method GET or PUT) of the object, valid expires_s seconds from at_s "
             "(seconds since the epoch; None: now). Signs locally; fetching credentials may take "
             "requests (GIL released).")
        .def("head", &NativeClient::head, py::arg("bucket"), py::arg("key"), py::arg("for_read") = false,
             py::arg("checksum") = false)
        .def("object_part_sizes", &NativeClient::object_part_sizes, py::arg("bucket"), py::arg("key"),
             py::arg("max_parts") = 1000,
             "The sizes of the parts of a multipart object, in order (GetObjectAttributes, max_parts a "
             "page); [] for one uploaded whole. GIL released; interruptible.")
        .def("list_objects", &NativeClient::list_objects, py::arg("bucket"), py::arg("prefix") = "",
             py::arg("delimiter") = "", py::arg("max_keys") = 1000, py::arg("continuation_token") = "",
             py::arg("start_after") = "")
        .def("delete_object", &NativeClient::delete_object, py::arg("bucket"), py::arg("key"))
        .def("delete_objects", &NativeClient::delete_objects, py::arg("bucket"), py::arg("keys"))
        .def("copy_object", &NativeClient::copy_object, py::arg("src_bucket"), py::arg("src_key"),
             py::arg("dst_bucket"), py::arg("dst_key"))
        .def("list_multipart_uploads", &NativeClient::list_multipart_uploads, py::arg("bucket"), py::arg("prefix") = "")
        .def("abort_multipart_upload", &NativeClient::abort_multipart_upload, py::arg("bucket"), py::arg("key"),
             py::arg("upload_id"), py::arg("wait_s") = 15.0)
        .def("abort_multipart_uploads", &NativeClient::abort_multipart_uploads, py::arg("bucket"), py::arg("uploads"),
             py::arg("wait_s") = 15.0)
        .def("pending_aborts", &NativeClient::pending_aborts, py::arg("retry") = false, py::arg("wait_s") = 15.0)
        .def_property_readonly("in_flight", &NativeClient::in_flight)
        .def_property_readonly("throttle_limit", [](NativeClient &c) { return c.client()->throttle_limit(); })
        .def_property_readonly("region", [](const NativeClient &c) { return c.config().region; })
        .def_property_readonly(
            "endpoint", [](const NativeClient &c) { return c.client()->endpoint().url(); },
            "The URL requests go to: the one given, else the environment's or the shared config file's, else AWS's "
            "for the region.")
        .def_property_readonly(
            "env_proxy", [](const NativeClient &c) { return c.client()->env_proxy(); },
            "Whether connections go through the proxy the environment names (proxy_from_env, and the endpoint is "
            "not loopback).")
        .def_property_readonly(
            "endpoint_source", [](const NativeClient &c) { return c.client()->endpoint().source; },
            "Where the endpoint came from: 'given', the variable or profile that named it, or \"AWS's for the "
            "region\".")
        .def(
            "address",
            [](const NativeClient &c, const std::string &bucket, const std::string &key) {
                s3torch::require_names({"ResolveEndpoint", bucket, key}, false);
                s3torch::Address a = s3torch::address_of(c.config(), c.client()->endpoint(), bucket, key);
                const char *algorithms[] = {"sigv4", "sigv4a", "sigv4-s3express"};
                py::dict d;
                d["url"] = a.endpoint_uri + a.path;
                d["signing"] = algorithms[static_cast<int>(a.signing.algorithm)];
                d["signing_name"] = a.signing.name.empty() ? std::string("s3") : a.signing.name;
                d["signing_region"] = a.signing.region.empty() ? c.config().region : a.signing.region;
                return d;
            },
            py::arg("bucket"), py::arg("key") = "",
            "Where requests for (bucket, key) go and how they are signed: a dict of url, signing ('sigv4', "
            "'sigv4a' or 'sigv4-s3express'), signing_name and signing_region. Raises S3InvalidArgumentError for "
            "what AWS's endpoint rules refuse (an ARN of another region with use_arn_region off...).")
        .def_property_readonly("part_size", [](const NativeClient &c) { return c.config().part_size; });
}

}  // namespace s3torch_py
