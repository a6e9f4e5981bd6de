// tensor.h — shape, dtype, device and contiguous storage; nothing more.
//
// shardtrain's kernels take raw pointers with named shapes (kernels/*.h); Tensor is the owner
// and bookkeeper around them: who holds which bytes, in which category, on which device.
// An owning tensor comes from a TrackingAllocator (so it is counted); view() and reshape()
// share the storage without allocating (so they are never counted twice); from_blob() wraps
// memory someone else owns (an MPI buffer, a mapped file) and is not counted at all.
// Always contiguous, row-major: there are no strides to get wrong.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace shardtrain {

enum class DeviceKind : uint8_t { kCpu, kCuda };

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3, 4]"

class Tensor {
 public:
  Tensor() = default;

  // Owning: a new tracked allocation (contents uninitialised).
  static Tensor empty(const Shape& shape, DType dtype, TrackingAllocator& alloc,
                      MemCategory category, std::string_view tag,
                      DeviceKind device = DeviceKind::kCpu);
  // Owning, zero-filled (host only).
  static Tensor zeros(const Shape& shape, DType dtype, TrackingAllocator& alloc,
                      MemCategory category, std::string_view tag);
  // Non-owning wrapper over memory managed elsewhere; not tracked.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype,
                          DeviceKind device = DeviceKind::kCpu);

  // A view of `shape` starting `offset` elements into this tensor; shares the storage.
  Tensor view(int64_t offset, const Shape& shape) const;
  // The same elements under another shape with the same numel.
  Tensor reshape(const Shape& shape) const;

  bool defined() const { return dtype_set_; }
  const Shape& shape() const { return shape_; }
  int dim() const { return int(shape_.size()); }
  int64_t size(int i) const;
  int64_t numel() const { return numel_; }
  int64_t bytes() const { return numel_ * dtype_bytes(dtype_); }
  DType dtype() const { return dtype_; }
  DeviceKind device() const { return device_; }
  bool owns_storage() const { return storage_ != nullptr; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* raw() const { return data_; }
  template <class T>
  T* data() const {
    ST_CHECK(dtype_of<T>() == dtype_, "tensor holds ", dtype_name(dtype_), ", accessed as ",
             dtype_name(dtype_of<T>()));
    return static_cast<T*>(data_);
  }

 private:
  Tensor(std::shared_ptr<Storage> storage, void* data, Shape shape, DType dtype, DeviceKind device);

  std::shared_ptr<Storage> storage_;  // null for from_blob tensors
  void* data_ = nullptr;
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
  bool dtype_set_ = false;
  DeviceKind device_ = DeviceKind::kCpu;
};

}  // namespace shardtrain
