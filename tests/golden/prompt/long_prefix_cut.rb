module Billing
  class Invoice
    TAX_RATE = 0.2

    def initialize(lines, customer:)
      @lines = lines
      @customer = customer
    end

    def subtotal
      @lines.sum(&:amount)
    end

    def tax
      subtotal * TAX_RATE
    end

    def total
      subtotal + tax
    end

    def overdue?(today = Date.today)
      due_on < today && !paid?
    end

    def to_h
      {
        customer: @customer.name,
        total: total,
        █
      }
    end
  end
end
