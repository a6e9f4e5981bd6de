#include "runtime/tensor.h"

#include <cstring>
#include <sstream>

namespace shardtrain {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    ST_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

Tensor::Tensor(std::shared_ptr<Storage> storage, void* data, Shape shape, DType dtype,
               DeviceKind device)
    : storage_(std::move(storage)),
      data_(data),
      shape_(std::move(shape)),
      numel_(shape_numel(shape_)),
      dtype_(dtype),
      dtype_set_(true),
      device_(device) {}

Tensor Tensor::empty(const Shape& shape, DType dtype, TrackingAllocator& alloc,
                     MemCategory category, std::string_view tag, DeviceKind device) {
  int64_t bytes = shape_numel(shape) * dtype_bytes(dtype);
  std::shared_ptr<Storage> storage = alloc.allocate(bytes, category, tag);
  void* data = storage->data();
  return Tensor(std::move(storage), data, shape, dtype, device);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, TrackingAllocator& alloc,
                     MemCategory category, std::string_view tag) {
  Tensor t = empty(shape, dtype, alloc, category, tag);
  std::memset(t.raw(), 0, size_t(t.bytes()));
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, DeviceKind device) {
  return Tensor(nullptr, data, shape, dtype, device);
}

Tensor Tensor::view(int64_t offset, const Shape& shape) const {
  int64_t n = shape_numel(shape);
  ST_CHECK(offset >= 0 && offset + n <= numel_, "view of ", n, " elements at offset ", offset,
           " exceeds a tensor of ", numel_);
  void* p = static_cast<char*>(data_) + offset * dtype_bytes(dtype_);
  return Tensor(storage_, p, shape, dtype_, device_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  ST_CHECK(shape_numel(shape) == numel_, "cannot reshape ", shape_str(shape_), " to ",
           shape_str(shape));
  return Tensor(storage_, data_, shape, dtype_, device_);
}

int64_t Tensor::size(int i) const {
  ST_CHECK(i >= 0 && i < dim(), "dimension ", i, " of a ", dim(), "-d tensor");
  return shape_[size_t(i)];
}

}  // namespace shardtrain
