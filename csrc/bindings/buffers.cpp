#include "buffers.h"

#include <cstdint>
#include <string>

namespace s3torch_py {

namespace {

// The DLPack ABI (v0.x "dltensor" capsules), declared here from the public specification.
struct DLDevice {
    int32_t device_type;
    int32_t device_id;
};
struct DLDataType {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
};
struct DLTensor {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
};
struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(DLManagedTensor *self);
};
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDAHost = 3;
constexpr int32_t kDLROCMHost = 11;

std::string type_name(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

}  // namespace

std::unique_ptr<HeldBuffer> HeldBuffer::acquire(py::handle obj, bool writable, const s3torch::ErrorContext &ctx) {
    auto refuse = [&](const std::string &msg) { s3torch::throw_invalid(msg, ctx); };
    std::unique_ptr<HeldBuffer> hb(new HeldBuffer());
    hb->owner_ = py::reinterpret_borrow<py::object>(obj);
    if (PyObject_CheckBuffer(obj.ptr())) {
        int flags = PyBUF_ANY_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(obj.ptr(), &hb->view_, flags) != 0) {
            PyErr_Clear();
            // Tell a read-only buffer from a non-contiguous one.
            Py_buffer probe;
            if (PyObject_GetBuffer(obj.ptr(), &probe, PyBUF_ANY_CONTIGUOUS) == 0) {
                PyBuffer_Release(&probe);
                refuse("the destination buffer (" + type_name(obj) +
                       ") is read-only: pass a writable buffer such as a bytearray, a writable memoryview or "
                       "a tensor");
            }
            PyErr_Clear();
            refuse("the buffer (" + type_name(obj) + ") is not contiguous: pass a contiguous buffer");
        }
        hb->has_view_ = true;
        hb->data_ = hb->view_.buf;
        hb->size_ = static_cast<size_t>(hb->view_.len);
        return hb;
    }
    if (py::hasattr(obj, "__dlpack__")) {
        py::object capsule = obj.attr("__dlpack__")();
        if (!PyCapsule_IsValid(capsule.ptr(), "dltensor"))
            refuse("__dlpack__ of " + type_name(obj) + " did not return a 'dltensor' capsule");
        auto *mt = static_cast<DLManagedTensor *>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
        // We consume the capsule: from now on its deleter is ours to call.
        PyCapsule_SetName(capsule.ptr(), "used_dltensor");
        hb->dl_managed_ = mt;
        const DLTensor &t = mt->dl_tensor;
        int32_t dev = t.device.device_type;
        if (dev != kDLCPU && dev != kDLCUDAHost && dev != kDLROCMHost)
            refuse("the tensor lives on a device (DLPack device type " + std::to_string(dev) +
                   "): transfers need CPU or pinned host memory; stage through a pinned CPU tensor");
        uint64_t elem_bits = static_cast<uint64_t>(t.dtype.bits) * t.dtype.lanes;
        if (elem_bits % 8 != 0) refuse("sub-byte tensor element types are not supported");
        uint64_t count = 1;
        int64_t expected = 1;
        bool contiguous = true;
        for (int32_t i = t.ndim - 1; i >= 0; --i) {
            if (t.strides && t.shape[i] != 1 && t.strides[i] != expected) contiguous = false;
            expected *= t.shape[i];
            count *= static_cast<uint64_t>(t.shape[i]);
        }
        if (!contiguous) refuse("the tensor is not contiguous: call .contiguous() first");
        hb->data_ = static_cast<char *>(t.data) + t.byte_offset;
        hb->size_ = static_cast<size_t>(count * (elem_bits / 8));
        return hb;
    }
    s3torch::throw_invalid(
        "expected a buffer (bytes-like object such as bytearray, memoryview, numpy array) or a "
        "tensor supporting __dlpack__, got " +
            type_name(obj),
        ctx);
}

HeldBuffer::~HeldBuffer() {
    if (has_view_) PyBuffer_Release(&view_);
    if (dl_managed_) {
        auto *mt = static_cast<DLManagedTensor *>(dl_managed_);
        if (mt->deleter) mt->deleter(mt);
    }
}

}  // namespace s3torch_py
